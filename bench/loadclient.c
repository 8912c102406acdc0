/*
 * A socketmap load client that is not the bottleneck: one thread, epoll,
 * N persistent connections, each with exactly one request in flight, as
 * Postfix's smtp(8) processes behave.  Records every request's latency.
 *
 *   loadclient -p PORT [-a 127.0.0.1] -c CONNS -k KEYFILE [-m MAP]
 *              [-d SECONDS] [-w WARMUP] [-o] [-t TIMEOUT] [-e PREFIX]
 *
 * Default: round-robin over the keys for WARMUP + SECONDS, measuring the
 * last SECONDS.  -o: send each line of KEYFILE exactly once (spread over
 * the connections, all connections sending at once), then stop; TIMEOUT
 * bounds it.  Prints one JSON object: throughput, p50/p90/p99/max in ms,
 * replies starting with PREFIX ("ok") and the others.
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
#include <time.h>
#include <unistd.h>

struct conn {
    int fd;
    int alive;
    int busy;
    double sent;
    size_t have;
    char buf[4096];
};

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static int cmp(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static char **reqs;
static size_t *reqlen;
static size_t nreqs;
static size_t next_req;

static double *lat;
static size_t nlat, caplat;

static void record(double v) {
    if (nlat == caplat) {
        caplat = caplat ? caplat * 2 : 1 << 16;
        lat = realloc(lat, caplat * sizeof *lat);
        if (!lat) { perror("realloc"); exit(1); }
    }
    lat[nlat++] = v;
}

static int send_next(struct conn *c, int once) {
    if (once && next_req >= nreqs) return 0;
    size_t i = next_req++ % nreqs;
    c->sent = now();
    c->busy = 1;
    c->have = 0;
    ssize_t w = write(c->fd, reqs[i], reqlen[i]);
    if (w != (ssize_t)reqlen[i]) { c->alive = 0; c->busy = 0; return -1; }
    return 1;
}

static double pct(double p) {
    if (!nlat) return 0;
    size_t i = (size_t)(p * nlat);
    if (i >= nlat) i = nlat - 1;
    return lat[i] * 1000;
}

int main(int argc, char **argv) {
    const char *addr = "127.0.0.1", *keyfile = NULL, *map = "postfix", *expect = "OK ";
    int port = 0, conns = 1, once = 0, opt;
    double seconds = 5, warm = 1, timeout = 60;
    while ((opt = getopt(argc, argv, "a:p:c:k:m:d:w:ot:e:")) != -1) {
        switch (opt) {
        case 'a': addr = optarg; break;
        case 'p': port = atoi(optarg); break;
        case 'c': conns = atoi(optarg); break;
        case 'k': keyfile = optarg; break;
        case 'm': map = optarg; break;
        case 'd': seconds = atof(optarg); break;
        case 'w': warm = atof(optarg); break;
        case 'o': once = 1; break;
        case 't': timeout = atof(optarg); break;
        case 'e': expect = optarg; break;
        default: fprintf(stderr, "bad option\n"); return 2;
        }
    }
    if (!port || !keyfile || conns < 1) { fprintf(stderr, "need -p, -k, -c\n"); return 2; }
    if (strncmp(addr, "127.", 4)) { fprintf(stderr, "loopback only\n"); return 2; }

    struct rlimit rl;
    getrlimit(RLIMIT_NOFILE, &rl);
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);

    FILE *f = fopen(keyfile, "r");
    if (!f) { perror(keyfile); return 2; }
    char line[1024];
    size_t cap = 0;
    while (fgets(line, sizeof line, f)) {
        line[strcspn(line, "\r\n")] = 0;
        if (!*line) continue;
        if (nreqs == cap) {
            cap = cap ? cap * 2 : 1024;
            reqs = realloc(reqs, cap * sizeof *reqs);
            reqlen = realloc(reqlen, cap * sizeof *reqlen);
        }
        size_t plen = strlen(map) + 1 + strlen(line);
        reqs[nreqs] = malloc(plen + 16);
        reqlen[nreqs] = sprintf(reqs[nreqs], "%zu:%s %s,", plen, map, line);
        nreqs++;
    }
    fclose(f);
    if (!nreqs) { fprintf(stderr, "no keys\n"); return 2; }

    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(port)};
    inet_pton(AF_INET, addr, &sa.sin_addr);
    struct conn *cs = calloc(conns, sizeof *cs);
    int ep = epoll_create1(0);
    for (int i = 0; i < conns; i++) {
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        if (connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0) { perror("connect"); return 1; }
        fcntl(fd, F_SETFL, O_NONBLOCK);
        cs[i].fd = fd;
        cs[i].alive = 1;
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = &cs[i]};
        epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
        /* Let the server accept: a full accept queue costs a 1 s SYN retry. */
        if (i % 32 == 31) usleep(2000);
    }
    usleep(100000);

    double start = now();
    double measure_from = once ? start : start + warm;
    double end = once ? start + timeout : measure_from + seconds;
    long ok = 0, other = 0, errors = 0, done = 0, inflight = 0, total = 0;
    char first_other[128] = "";
    size_t elen = strlen(expect);
    for (int i = 0; i < conns; i++) {
        int r = send_next(&cs[i], once);
        if (r > 0) inflight++;
        else if (r < 0) errors++;
    }
    struct epoll_event evs[256];
    double last = start;
    while (inflight > 0) {
        double t = now();
        if (t >= end) break;
        int n = epoll_wait(ep, evs, 256, (int)((end - t) * 1000) + 1);
        for (int e = 0; e < n; e++) {
            struct conn *c = evs[e].data.ptr;
            ssize_t r = read(c->fd, c->buf + c->have, sizeof c->buf - c->have);
            if (r <= 0) {
                if (r < 0 && errno == EAGAIN) continue;
                if (c->busy) { inflight--; errors++; }
                c->alive = 0; c->busy = 0;
                epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
                continue;
            }
            c->have += r;
            char *colon = memchr(c->buf, ':', c->have);
            if (!colon) continue;
            size_t len = strtoul(c->buf, NULL, 10);
            size_t need = (colon - c->buf) + 1 + len + 1;
            if (c->have < need) continue;
            double got = now();
            last = got;
            c->busy = 0;
            inflight--;
            total++;
            if (c->sent >= measure_from && got < end) {
                record(got - c->sent);
                done++;
                if (len >= elen && !memcmp(colon + 1, expect, elen)) ok++;
                else {
                    if (!other) snprintf(first_other, sizeof first_other, "%.*s",
                                         (int)(len < 100 ? len : 100), colon + 1);
                    other++;
                }
            }
            int s = send_next(c, once);
            if (s > 0) inflight++;
            else if (s < 0) errors++;
        }
    }
    double elapsed = once ? last - start : seconds;
    qsort(lat, nlat, sizeof *lat, cmp);
    for (char *p = first_other; *p; p++) if (*p == '"' || *p == '\\' || *p < 32) *p = '?';
    printf("{\"connections\": %d, \"requests\": %ld, \"seconds\": %.4f, \"rps\": %.1f, "
           "\"p50_ms\": %.4f, \"p90_ms\": %.4f, \"p99_ms\": %.4f, \"max_ms\": %.4f, "
           "\"ok\": %ld, \"other\": %ld, \"first_other\": \"%s\", \"errors\": %ld, "
           "\"unanswered\": %ld, \"total\": %ld}\n",
           conns, done, elapsed, elapsed > 0 ? done / elapsed : 0.0, pct(0.5), pct(0.9),
           pct(0.99), nlat ? lat[nlat - 1] * 1000 : 0.0, ok, other, first_other, errors,
           inflight, total);
    return 0;
}
