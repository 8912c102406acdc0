"""
MTA-STS answers as Postfix's postmap reads them over socketmap, from a real
mxpolicyd evaluating real DNS (nsd) and real policy hosts (nginx).
"""

from __future__ import annotations

import time

import pytest

from . import scenarios
from .case import NOT_FOUND, IntegrationTestCase
from .scenarios import ENFORCE, ENFORCE_MX, enforce_answer, mx_of, policy

pytestmark = pytest.mark.integration


class MTASTSAnswerTests(IntegrationTestCase):
    """One daemon evaluates every static scenario of the test world."""

    shared = True

    def assertFetchFailed(self, domain: str) -> None:
        """NOTFOUND, and again once the host has seen the fetch."""
        self.assertAnswer(domain, NOT_FOUND)
        self.assertTrue(self.wait_for_requests(domain), f"no request for {domain}'s policy")
        self.assertAnswer(domain, NOT_FOUND)

    def assertNoPolicy(self, domain: str) -> None:
        """NOTFOUND, and still NOTFOUND when asked again after the first evaluation."""
        self.assertAnswer(domain, NOT_FOUND)
        time.sleep(0.3)
        self.assertAnswer(domain, NOT_FOUND)

    def test_enforce(self) -> None:
        """An enforce policy gives `secure`, its MX patterns as match= and servername=hostname."""
        self.assertAnswer("enforce.test", ENFORCE)
        self.assertEqual(
            ENFORCE, "secure match=mx1.enforce.test:.mx.enforce.test servername=hostname"
        )

    def test_enforce_upper_case_key(self) -> None:
        """The key is folded to lower case: ENFORCE.TEST gets enforce.test's policy."""
        self.assertAnswer("ENFORCE.TEST", ENFORCE)

    def test_enforce_trailing_dot(self) -> None:
        """A trailing dot in the key is ignored."""
        self.assertAnswer("enforce.test.", ENFORCE)

    def test_testing_plain_profile(self) -> None:
        """A testing-mode policy is not enforced by the plain postfix map."""
        self.assertNoPolicy("testing.test")

    def test_testing_strict_profile(self) -> None:
        """The postfix-strict map answers a testing-mode policy in the enforce form."""
        self.assertAnswer("testing.test", enforce_answer(mx_of("testing.test")), "postfix-strict")

    def test_strict_profile_enforce(self) -> None:
        """The postfix-strict map answers an enforce policy like the plain map."""
        self.assertAnswer("enforce.test", ENFORCE, "postfix-strict")

    def test_mode_none(self) -> None:
        """A mode none policy means no policy."""
        self.assertNoPolicy("none.test")

    def test_mode_none_strict(self) -> None:
        """Even the strict map does not enforce a mode none policy."""
        self.assertAnswer("none.test", NOT_FOUND, "postfix-strict")

    def test_no_record(self) -> None:
        """Without a _mta-sts TXT record the host's policy is not used."""
        self.assertNoPolicy("norecord.test")

    def test_two_records(self) -> None:
        """Two v=STSv1 TXT records mean no policy."""
        self.assertNoPolicy("tworecords.test")

    def test_bad_id(self) -> None:
        """A TXT record whose id has characters other than letters and digits is invalid."""
        self.assertNoPolicy("badid.test")

    def test_record_without_id(self) -> None:
        """A TXT record without an id is invalid."""
        self.assertNoPolicy("noid.test")

    def test_other_txt_records_ignored(self) -> None:
        """TXT records not starting with v=STSv1 beside the real one are ignored."""
        self.assertAnswer("othertxt.test", enforce_answer(mx_of("othertxt.test")))

    def test_record_in_several_strings(self) -> None:
        """The strings of one TXT record are joined without spaces."""
        self.assertAnswer("split.test", enforce_answer(mx_of("split.test")))

    def test_crlf_policy(self) -> None:
        """A policy with CRLF line ends is accepted."""
        self.assertAnswer("crlf.test", enforce_answer(mx_of("crlf.test")))

    def test_record_behind_cname(self) -> None:
        """A _mta-sts CNAME is followed to its TXT record; the host stays mta-sts.<domain>."""
        self.assertAnswer("cname.test", enforce_answer(mx_of("cname.test")))

    def test_policy_404(self) -> None:
        """A policy URL answering 404 gives no policy."""
        self.assertFetchFailed("notfound.test")

    def test_policy_redirect_not_followed(self) -> None:
        """A 301 is not followed, though its target serves a valid enforce policy."""
        self.assertFetchFailed("redirect.test")

    def test_policy_wrong_content_type(self) -> None:
        """A policy served as application/json is refused."""
        self.assertFetchFailed("json.test")

    def test_policy_over_64k(self) -> None:
        """A 70000-byte policy (valid but for its size) is refused."""
        self.assertFetchFailed("big.test")

    def test_policy_syntax_error(self) -> None:
        """A policy whose max_age line lacks its colon is invalid."""
        self.assertFetchFailed("syntax.test")

    def test_certificate_wrong_name(self) -> None:
        """A policy host whose certificate names another host gives no policy."""
        self.assertNoPolicy("wrongname.test")

    def test_certificate_expired(self) -> None:
        """A policy host with an expired certificate gives no policy."""
        self.assertNoPolicy("expired.test")

    def test_tlsrpt_profile(self) -> None:
        """The postfix-tlsrpt map adds the TLSRPT policy attributes postmap passes through."""
        self.assertAnswer(
            "enforce.test",
            scenarios.tlsrpt_answer("enforce.test", ENFORCE_MX),
            "postfix-tlsrpt",
        )

    def test_unknown_map_name(self) -> None:
        """An unknown socketmap name is a lookup error (PERM), not a silent not-found."""
        result = self.daemon.postmap("enforce.test", "no-such-map")
        self.assertEqual((result.code, result.stdout), (1, ""))
        self.assertIn("query error", result.stderr)

    def test_keys_without_lookup(self) -> None:
        """Parent-domain, [host], host:port and address-literal keys are not found."""
        for key in [".enforce.test", "[127.0.0.1]", "[mx1.enforce.test]",
                    "enforce.test:25", "[mx1.enforce.test]:587", "127.0.0.1"]:
            self.assertAnswer(key, NOT_FOUND)

    def test_many_keys_one_connection(self) -> None:
        """postmap -q - sends every key over one connection and gets each key's own answer."""
        keys = ["enforce.test", "norecord.test", "ENFORCE.TEST", "testing.test",
                "[127.0.0.1]", "cname.test", ".enforce.test", "enforce.test:25",
                "notfound.test", "split.test"]
        result = self.daemon.postmap_many(keys)
        expected = "".join(
            f"{key}\t{value}\n"
            for key, value in [
                ("enforce.test", ENFORCE),
                ("ENFORCE.TEST", ENFORCE),
                ("cname.test", enforce_answer(mx_of("cname.test"))),
                ("split.test", enforce_answer(mx_of("split.test"))),
            ]
        )
        self.assertEqual((result.code, result.stdout, result.stderr), (0, expected, ""))


class PolicyChangeTests(IntegrationTestCase):
    """Daemons of their own, for rotations, dead resolvers and restarts."""

    def test_id_rotation(self) -> None:
        """A new TXT id makes the daemon fetch the new policy; the same id does not."""
        daemon = self.start_daemon()
        before = enforce_answer(scenarios.ROTATE_MX_BEFORE)
        after = enforce_answer(scenarios.ROTATE_MX_AFTER)
        self.assertAnswer("rotate.test", before, daemon=daemon)
        nginx, nsd = self.world.nginx, self.world.nsd
        original_records = {"_mta-sts.rotate": list(nsd.records["_mta-sts.rotate"])}
        try:
            nginx.set_policy("rotate.test", policy("enforce", scenarios.ROTATE_MX_AFTER))
            unchanged_id = self.poll_answers("rotate.test", None, 2.5, daemon=daemon)
            self.assertEqual(set(unchanged_id), {before})
            nsd.update(scenarios.rotated_records())
            seen = self.poll_answers("rotate.test", after, 10.0, daemon=daemon)
            self.assertEqual(seen[-1], after, f"answers after the rotation: {seen}")
            self.assertLessEqual(set(seen), {before, after})
        finally:
            nsd.update(original_records)
            nginx.set_policy("rotate.test", policy("enforce", scenarios.ROTATE_MX_BEFORE))

    def test_dns_timeout_keeps_cached_policy(self) -> None:
        """While DNS times out, a cached enforce policy is still answered, without delay."""
        daemon = self.start_daemon()
        stale = enforce_answer(mx_of("stale.test"))
        self.assertAnswer("stale.test", stale, daemon=daemon)
        with self.world.dns_paused():
            time.sleep(1.5)  # past the 1 s TXT TTL floor: the next lookup re-checks
            started = time.monotonic()
            self.assertAnswer("stale.test", stale, daemon=daemon)
            self.assertLess(time.monotonic() - started, 1.5)
            time.sleep(3.0)  # the re-check (2 attempts of 1 s) has timed out
            self.assertAnswer("stale.test", stale, daemon=daemon)

    def test_restart_with_dead_dns_answers_from_store(self) -> None:
        """A restarted daemon with dead DNS answers cached policies at the first query."""
        first = self.start_daemon()
        state = first.directory / "state"
        restart = enforce_answer(mx_of("restart.test"))
        testing_strict = enforce_answer(mx_of("testing.test"))
        self.assertAnswer("restart.test", restart, daemon=first)
        self.assertAnswer("testing.test", testing_strict, "postfix-strict", daemon=first)
        first.stop()
        second = self.start_daemon(state, self.world.dead_dns_config())
        self.assertAnswer("restart.test", restart, daemon=second)
        self.assertAnswer("testing.test", testing_strict, "postfix-strict", daemon=second)
        self.assertAnswer("testing.test", NOT_FOUND, daemon=second)
        time.sleep(1.5)  # past the TXT TTL floor and the dead resolver's timeout
        self.assertAnswer("restart.test", restart, daemon=second)
        time.sleep(1.0)
        self.assertAnswer("restart.test", restart, daemon=second)

    def test_dead_dns_unknown_domain(self) -> None:
        """With DNS dead, DANE off and nothing cached a domain is not found (as without MTA-STS)."""
        daemon = self.start_daemon(
            None, self.world.dead_dns_config(), self.world.no_dane_config()
        )
        self.assertAnswer("enforce.test", NOT_FOUND, daemon=daemon)
        time.sleep(1.0)
        self.assertAnswer("enforce.test", NOT_FOUND, daemon=daemon)
