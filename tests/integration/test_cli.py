"""
The administrator's command line against the real test world: asking a
running daemon, evaluating a domain directly, and checking a config file.
"""

from __future__ import annotations

import json

import pytest

from .case import IntegrationTestCase
from .daemon import toml_text
from .scenarios import ENFORCE, ENFORCE_MX

pytestmark = pytest.mark.integration


class CommandLineTests(IntegrationTestCase):
    """mxpolicyd's subcommands, run as an administrator would run them."""

    shared = True

    def test_query_found(self) -> None:
        """`mxpolicyd query` prints the running daemon's answer as postmap does and exits 0."""
        r = self.daemon.cli("query", "enforce.test")
        self.assertEqual((r.returncode, r.stdout), (0, f"enforce.test\t{ENFORCE}\n"), r.stderr)

    def test_query_not_found(self) -> None:
        """`mxpolicyd query` exits 1 with no output for a domain without a policy."""
        r = self.daemon.cli("query", "norecord.test")
        self.assertEqual((r.returncode, r.stdout), (1, ""), r.stderr)

    def test_explain_json(self) -> None:
        """`mxpolicyd explain --json` shows the policy's mode, the deciding rule and the answer."""
        r = self.daemon.cli("explain", "enforce.test", "--json")
        self.assertEqual(r.returncode, 0, r.stderr)
        result = json.loads(r.stdout)
        self.assertEqual(result["domain"], "enforce.test")
        self.assertEqual(result["mta_sts"]["policy"]["mode"], "enforce")
        self.assertEqual(result["mta_sts"]["policy"]["mx"], ENFORCE_MX)
        self.assertEqual(result["action"], "sts-enforce")
        self.assertIn("enforce", result["rule"])
        self.assertEqual(result["postfix"], "OK " + ENFORCE)

    def test_explain_json_no_policy(self) -> None:
        """`mxpolicyd explain --json` for a 404 policy host names a rule and answers NOTFOUND."""
        r = self.daemon.cli("explain", "notfound.test", "--json")
        self.assertEqual(r.returncode, 1, r.stderr)
        result = json.loads(r.stdout)
        self.assertEqual(result["action"], "none")
        self.assertTrue(result["rule"])
        self.assertEqual(result["postfix"], "NOTFOUND")

    def test_check_config(self) -> None:
        """`mxpolicyd check-config` accepts the test world's config."""
        r = self.daemon.cli("check-config")
        self.assertEqual(r.returncode, 0, r.stderr)

    def test_check_config_names_bad_key(self) -> None:
        """`mxpolicyd check-config` exits 2 naming the key of an invalid value."""
        bad = self.daemon.directory / "bad.toml"
        config = dict(self.daemon.config)
        config["dns"] = dict(config["dns"], timeout="soon")
        bad.write_text(toml_text(config))
        r = self.daemon.cli("check-config", config_path=bad)
        self.assertEqual(r.returncode, 2, r.stdout + r.stderr)
        self.assertIn("timeout", r.stderr)
