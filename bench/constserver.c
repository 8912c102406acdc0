/*
 * The ceiling: a socketmap server in C (one thread, epoll) that answers
 * every netstring request with the same reply.  bench/compare runs the load
 * client against it to show that the client is not what limits the Python
 * servers' figures.
 *
 *   constserver REPLY      # listens on 127.0.0.1, prints "port N"
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

struct conn {
    int fd;
    size_t have;
    char buf[16384];
};

int main(int argc, char **argv) {
    if (argc != 2) { fprintf(stderr, "usage: constserver REPLY\n"); return 2; }
    char reply[8192];
    int rlen = snprintf(reply, sizeof reply, "%zu:%s,", strlen(argv[1]), argv[1]);

    struct rlimit rl;
    getrlimit(RLIMIT_NOFILE, &rl);
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);

    int lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET};
    inet_pton(AF_INET, "127.0.0.1", &sa.sin_addr);
    if (bind(lfd, (struct sockaddr *)&sa, sizeof sa) < 0 || listen(lfd, 1024) < 0) {
        perror("listen");
        return 1;
    }
    socklen_t sl = sizeof sa;
    getsockname(lfd, (struct sockaddr *)&sa, &sl);
    printf("port %d\n", ntohs(sa.sin_port));
    fflush(stdout);

    int ep = epoll_create1(0);
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = NULL};
    epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &ev);
    struct epoll_event evs[256];
    for (;;) {
        int n = epoll_wait(ep, evs, 256, -1);
        for (int e = 0; e < n; e++) {
            struct conn *c = evs[e].data.ptr;
            if (!c) {
                int fd;
                while ((fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK)) >= 0) {
                    int one = 1;
                    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                    struct conn *nc = calloc(1, sizeof *nc);
                    nc->fd = fd;
                    struct epoll_event cev = {.events = EPOLLIN, .data.ptr = nc};
                    epoll_ctl(ep, EPOLL_CTL_ADD, fd, &cev);
                }
                continue;
            }
            ssize_t r = read(c->fd, c->buf + c->have, sizeof c->buf - c->have);
            if (r <= 0) {
                if (r < 0 && errno == EAGAIN) continue;
                close(c->fd);
                free(c);
                continue;
            }
            c->have += r;
            size_t off = 0;
            for (;;) {
                char *colon = memchr(c->buf + off, ':', c->have - off);
                if (!colon) break;
                size_t len = strtoul(c->buf + off, NULL, 10);
                size_t total = (colon - (c->buf + off)) + 1 + len + 1;
                if (c->have - off < total) break;
                off += total;
                /* One reply per request; a small reply fits the socket buffer. */
                if (write(c->fd, reply, rlen) != rlen) break;
            }
            memmove(c->buf, c->buf + off, c->have - off);
            c->have -= off;
        }
    }
}
