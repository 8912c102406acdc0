"""
Tests for L{mxpolicyd.policy.admin}: the [policy] and [domain."..."] tables, the
Postfix policy grammar check, matching a domain to its entry, and the
warnings about entries that end.
"""

from __future__ import annotations

import datetime
import os
from typing import Any

from twisted.internet.task import Clock
from twisted.logger import Logger, LogLevel, formatEvent
from twisted.trial.unittest import SynchronousTestCase

from mxpolicyd.config.expiry import ExpiryWatch
from mxpolicyd.config.load import ConfigError, load, parse
from mxpolicyd.config.postfix import check_postfix
from mxpolicyd.policy.admin import AdminPolicy, AdminRule

ENV = {"HOME": "/home/u"}
DAY = 86400.0
# 2026-12-31 in seconds: the day after it starts at 2027-01-01T00:00:00Z.
END_OF_2026 = datetime.datetime(2027, 1, 1, tzinfo=datetime.timezone.utc).timestamp()


def domains(**entries: dict[str, Any]) -> dict[str, Any]:
    return {"domain": {name.replace("_", "."): entry for name, entry in entries.items()}}


class PostfixGrammarTests(SynchronousTestCase):
    def test_valid_policies(self) -> None:
        """Valid policies pass, whitespace and commas normalised to single spaces."""
        for text, normalised in [
            ("secure match=.partner.test servername=hostname",
             "secure match=.partner.test servername=hostname"),
            ("  verify,match=hostname:nexthop\ttafile=/etc/ta.pem  ",
             "verify match=hostname:nexthop tafile=/etc/ta.pem"),
            ("dane-only protocols=>=TLSv1.2", "dane-only protocols=>=TLSv1.2"),
            ("encrypt protocols=!SSLv2:!SSLv3:!TLSv1 ciphers=high exclude=aNULL",
             "encrypt protocols=!SSLv2:!SSLv3:!TLSv1 ciphers=high exclude=aNULL"),
            ("fingerprint match=AA:BB match=CC:DD", "fingerprint match=AA:BB match=CC:DD"),
            ("may connection_reuse=yes servername=mx.partner.test",
             "may connection_reuse=yes servername=mx.partner.test"),
            ("none", "none"),
            ("DANE", "DANE"),
        ]:
            self.assertEqual(check_postfix(text), (normalised, None), text)

    def test_refused_policies(self) -> None:
        """Each grammar mistake is refused with a message naming the word at fault."""
        for text, expected in [
            ("", "empty"),
            ("strict", "'strict', which is not a Postfix TLS level"),
            ("dane match=.partner.test", "match= at level dane"),
            ("dane-only match=x", "match= at level dane-only"),
            ("encrypt match=x", "match= at level encrypt"),
            ("may tafile=/x", "tafile= at level may"),
            ("secure match", "'match', which is not a name=value attribute"),
            ("secure ciphers=high ciphers=low", "repeats ciphers="),
            ("secure ciphers=strong", "ciphers=strong"),
            ("secure connection_reuse=maybe", "connection_reuse=maybe"),
            ("secure servername=-bad-", "servername=-bad-"),
            ("secure protocols=TLSv9", "'TLSv9' is not a protocol"),
            ("secure enable_rpk=yes", "enable_rpk=, which Postfix 3.7 does not know"),
            ("secure policy_type=sts", "policy_type=, a TLSRPT attribute"),
            ("secure match=", "empty match= value"),
            ("none ciphers=high", "level none"),
            ("secure { match = x }", "not a name=value attribute"),
            ("secure match=\u00e9.test", "printable ASCII"),
        ]:
            normalised, problem = check_postfix(text)
            self.assertIsNotNone(problem, text)
            assert problem is not None
            self.assertIn(expected, problem, text)


class AdminConfigTests(SynchronousTestCase):
    def error(self, data: dict[str, Any]) -> str:
        return str(self.assertRaises(ConfigError, parse, data, "test.toml", ENV))

    def test_defaults(self) -> None:
        """With nothing configured the policy is neutral: no entries, no minimum, no guard."""
        admin = parse({}, "test.toml", ENV).admin
        self.assertTrue(admin.neutral)
        self.assertEqual((admin.min_mx_level, admin.min_tls_level, admin.downgrade),
                         ("none", "none", "off"))
        self.assertEqual((admin.memory, admin.expiry_warning), (30 * DAY, 7 * DAY))

    def test_policy_table(self) -> None:
        """[policy] keys are read, days turned into seconds."""
        admin = parse({"policy": {"min_mx_level": "mta-sts", "min_tls_level": "encrypted",
                                  "downgrade": "enforce", "downgrade_memory_days": 2,
                                  "expiry_warning_days": 0}}, "test.toml", ENV).admin
        self.assertEqual((admin.min_mx_level, admin.min_tls_level, admin.downgrade),
                         ("mta-sts", "encrypted", "enforce"))
        self.assertEqual((admin.memory, admin.expiry_warning), (2 * DAY, 0.0))
        self.assertFalse(admin.neutral)

    def test_policy_errors_name_key(self) -> None:
        """A bad [policy] value is an error naming policy.<key>."""
        for data, expected in [
            ({"min_tls_level": "strong"}, "test.toml: policy.min_tls_level must be one of"),
            ({"min_mx_level": "dane"}, "policy.min_mx_level must be one of"),
            ({"downgrade": "on"}, "policy.downgrade must be one of \"off\", \"warn\""),
            ({"downgrade_memory_days": 0}, "policy.downgrade_memory_days must be greater"),
            ({"expiry_warning_days": -1}, "policy.expiry_warning_days must be 0 or more"),
            ({"memory": 3}, "policy.memory is not a known setting"),
        ]:
            self.assertIn(expected, self.error({"policy": data}))

    def test_domain_entries(self) -> None:
        """Domain keys are normalised; each kind of entry is read."""
        admin = parse(domains(**{
            "Partner_test": {"postfix": "secure  match=.partner.test", "subdomains": True,
                             "exim": "sts-enforce", "mx": ["MX1.partner.test", "*.partner.test"]},
            "broken_test": {"exempt": True, "expires": datetime.date(2026, 12, 31)},
            "strict_test": {"min_tls_level": "authenticated"},
        }), "test.toml", ENV).admin
        partner = admin.rules["partner.test"]
        self.assertEqual(partner.key, 'domain."Partner.test"')
        self.assertEqual(partner.postfix, "secure match=.partner.test")
        self.assertEqual(partner.mx, ("mx1.partner.test", "*.partner.test"))
        self.assertTrue(partner.subdomains and partner.forces_both)
        broken = admin.rules["broken.test"]
        self.assertEqual((broken.exempt, broken.expires, broken.expires_text),
                         (True, END_OF_2026, "2026-12-31"))
        strict = admin.rules["strict.test"]
        self.assertEqual((strict.forces, strict.min_tls_level), (False, "authenticated"))

    def test_expires_forms(self) -> None:
        """A date ends after that day (UTC); a date-time without offset is UTC; an offset counts."""
        naive = datetime.datetime(2026, 6, 1, 12, 0)
        aware = datetime.datetime(2026, 6, 1, 12, 0, tzinfo=datetime.timezone(
            datetime.timedelta(hours=2)))
        admin = parse(domains(a_test={"exempt": True, "expires": naive},
                              b_test={"exempt": True, "expires": aware}), "t.toml", ENV).admin
        utc = datetime.datetime(2026, 6, 1, 12, 0, tzinfo=datetime.timezone.utc).timestamp()
        self.assertEqual(admin.rules["a.test"].expires, utc)
        self.assertEqual(admin.rules["b.test"].expires, utc - 7200)

    def test_domain_errors_name_key(self) -> None:
        """Every mistake in a domain entry is an error naming domain."<name>".<key>."""
        for entry, expected in [
            ({"postfix": "dane match=.p.test"},
             'test.toml: domain."p.test".postfix has match= at level dane'),
            ({"postfix": "secure policy_type=sts"}, 'domain."p.test".postfix has policy_type='),
            ({"exim": "sts-testing"}, 'domain."p.test".exim must be one of'),
            ({"exim": "sts-enforce"}, 'domain."p.test".mx is required with exim = "sts-enforce"'),
            ({"exim": "dane", "mx": ["mx.p.test"]}, 'domain."p.test".mx is only allowed with'),
            ({"exim": "sts-enforce", "mx": ["mx..p.test"]},
             "domain.\"p.test\".mx entry 'mx..p.test' is not a host name"),
            ({"exempt": True, "postfix": "secure"}, 'domain."p.test".exempt cannot be combined'),
            ({"exempt": True, "min_tls_level": "encrypted"},
             'domain."p.test".exempt cannot be combined with a minimum'),
            ({"expires": "2026-12-31", "exempt": True},
             'domain."p.test".expires must be a TOML date or date-time, not a string'),
            ({"subdomains": True}, 'domain."p.test" sets nothing'),
            ({"exempt": "yes"}, 'domain."p.test".exempt must be true or false'),
            ({"min_mx_level": "high"}, 'domain."p.test".min_mx_level must be one of'),
            ({"exempt": True, "comment": "x"}, 'domain."p.test".comment is not a known setting'),
        ]:
            self.assertIn(expected, self.error(domains(p_test=entry)), entry)

    def test_domain_key_errors(self) -> None:
        """A key that is no domain, or names a domain twice, is an error naming it."""
        self.assertIn('domain."not a domain" is not a domain name',
                      self.error({"domain": {"not a domain": {"exempt": True}}}))
        self.assertIn('domain."test" is not a domain name',
                      self.error({"domain": {"test": {"exempt": True}}}))
        self.assertIn('names p.test again (as domain."P.test")',
                      self.error({"domain": {"P.test": {"exempt": True},
                                             "p.test.": {"exempt": True}}}))
        self.assertIn('domain."p.test" must be a table',
                      self.error({"domain": {"p.test": True}}))

    def test_warnings(self) -> None:
        """check-config's warnings: one-protocol overrides, entries that end soon or ended."""
        admin = parse(domains(
            a_test={"postfix": "secure"},
            b_test={"exim": "none"},
            c_test={"exempt": True, "expires": datetime.date(2026, 12, 31)},
            d_test={"postfix": "secure", "exim": "none"},
        ), "t.toml", ENV).admin
        lines = admin.warnings(END_OF_2026 - 3 * DAY)
        self.assertEqual(len(lines), 3, lines)
        self.assertIn('domain."a.test" forces only the Postfix answer', lines[0])
        self.assertIn('domain."b.test" forces only the Exim action', lines[1])
        self.assertIn('domain."c.test" ends on 2026-12-31 (in 3 days)', lines[2])
        self.assertIn("ended on 2026-12-31", admin.warnings(END_OF_2026)[2])
        self.assertEqual(len(admin.warnings(END_OF_2026 - 30 * DAY)), 2)


class ConfDirAdminTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.directory = os.path.abspath(self.mktemp())
        os.makedirs(os.path.join(self.directory, "conf.d"))
        self.path = self.write("mxpolicyd.toml",
                               '[domain."a.test"]\nexempt = true\n'
                               '[domain."b.test"]\npostfix = "secure"\nexim = "dane"\n')

    def write(self, name: str, text: str) -> str:
        path = os.path.join(self.directory, name)
        with open(path, "w") as f:
            f.write(text)
        return path

    def test_dropin_adds_override(self) -> None:
        """A conf.d fragment adds an entry next to the main file's."""
        self.write("conf.d/50-partner.toml",
                   '[domain."partner.test"]\npostfix = "secure match=.partner.test"\n')
        rules = load(self.path, ENV).admin.rules
        self.assertEqual(sorted(rules), ["a.test", "b.test", "partner.test"])
        self.assertEqual(rules["partner.test"].postfix, "secure match=.partner.test")

    def test_dropin_replaces_entry_whole(self) -> None:
        """A fragment's entry for a domain replaces the earlier one whole, never merged key by key."""
        self.write("conf.d/50-a.toml", '[domain."a.test"]\npostfix = "encrypt"\n')
        rules = load(self.path, ENV).admin.rules
        self.assertEqual((rules["a.test"].exempt, rules["a.test"].postfix), (False, "encrypt"))
        self.assertEqual(rules["b.test"].exim, "dane")

    def test_dropin_error_names_fragment_and_key(self) -> None:
        """A grammar error in a fragment names the fragment and the key."""
        bad = self.write("conf.d/50-bad.toml", '[domain."c.test"]\npostfix = "dane match=x"\n')
        e = self.assertRaises(ConfigError, load, self.path, ENV)
        self.assertIn(bad + ': domain."c.test".postfix has match= at level dane', str(e))


def rule(domain: str, subdomains: bool = False, expires: float | None = None) -> AdminRule:
    return AdminRule(domain, 'domain."%s"' % domain, subdomains=subdomains, exempt=True,
                     expires=expires, expires_text="then" if expires else "")


class RuleMatchTests(SynchronousTestCase):
    def test_matching_table(self) -> None:
        """Exact beats subdomain entries, the longest apex wins, and subdomains are never implied."""
        admin = AdminPolicy(rules={
            "x.test": rule("x.test", subdomains=True),
            "a.x.test": rule("a.x.test"),
            "y.test": rule("y.test"),
            "b.x.test": rule("b.x.test", subdomains=True),
        })
        for domain, expected in [
            ("x.test", "x.test"),
            ("a.x.test", "a.x.test"),
            ("deep.a.x.test", "x.test"),  # a.x.test does not cover subdomains
            ("b.x.test", "b.x.test"),
            ("c.b.x.test", "b.x.test"),
            ("other.x.test", "x.test"),
            ("y.test", "y.test"),
            ("sub.y.test", None),
            ("z.test", None),
            ("xx.test", None),
        ]:
            found = admin.rule_for(domain, 0.0)
            self.assertEqual(found.domain if found else None, expected, domain)

    def test_ended_entries_ignored(self) -> None:
        """An entry that has ended no longer matches, and a covering parent's entry takes over."""
        admin = AdminPolicy(rules={
            "x.test": rule("x.test", subdomains=True, expires=200.0),
            "a.x.test": rule("a.x.test", expires=100.0),
        })
        found = admin.rule_for("a.x.test", 99.0)
        self.assertEqual(found.domain if found else None, "a.x.test")
        found = admin.rule_for("a.x.test", 100.0)
        self.assertEqual(found.domain if found else None, "x.test")
        self.assertIsNone(admin.rule_for("a.x.test", 200.0))


class ExpiryWatchTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(END_OF_2026 - 10 * DAY)
        self.events: list[dict[str, Any]] = []
        self.admin = parse(domains(
            broken_test={"exempt": True, "expires": datetime.date(2026, 12, 31)}),
            "t.toml", ENV).admin
        self.watch = ExpiryWatch(self.clock, self.admin)
        self.watch._log = Logger(observer=self.events.append)  # type: ignore[misc]

    def warnings(self) -> list[str]:
        lines = [formatEvent(e) for e in self.events if e["log_level"] == LogLevel.warn]
        self.events.clear()
        return lines

    def test_warns_before_and_at_the_end(self) -> None:
        """Quiet until expiry_warning_days before, then daily warnings, then one at the end."""
        self.watch.startService()
        self.assertEqual(self.warnings(), [])
        self.clock.advance(2 * DAY)
        self.assertEqual(self.warnings(), [])
        self.clock.advance(DAY)  # 7 days before the end
        lines = self.warnings()
        self.assertEqual(len(lines), 1)
        self.assertIn('domain."broken.test" ends on 2026-12-31 (in 7 days)', lines[0])
        self.clock.advance(6 * DAY)
        self.assertIn("(in 24 hours)", self.warnings()[0])
        self.clock.advance(DAY)
        lines = self.warnings()
        self.assertEqual(len(lines), 1)
        self.assertIn('domain."broken.test" ended on 2026-12-31: broken.test is answered '
                      "from the evidence again", lines[0])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_reload_checks_at_once(self) -> None:
        """A reload looks at the new entries at once; stopping cancels the timer."""
        self.watch.startService()
        soon = parse(domains(p_test={"exempt": True, "expires": datetime.datetime.fromtimestamp(
            self.clock.seconds() + 3600, datetime.timezone.utc)}), "t.toml", ENV).admin
        self.watch.set_policy(soon)
        self.assertIn("(in 60 minutes)", self.warnings()[0])
        self.watch.stopService()
        self.assertEqual(self.clock.getDelayedCalls(), [])
