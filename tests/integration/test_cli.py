"""
The administrator's command line against the real test world: asking a
running daemon, evaluating a domain directly, and checking a config file.
"""

from __future__ import annotations

import json
import re

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

    def test_config_before_the_command(self) -> None:
        """`mxpolicyd --config FILE query|explain|cache` uses FILE's listener, resolver and CA."""
        r = self.daemon.cli("query", "enforce.test", config_first=True)
        self.assertEqual((r.returncode, r.stdout), (0, f"enforce.test\t{ENFORCE}\n"), r.stderr)
        # The embedded defaults would ask the system resolver and distrust the test CA.
        r = self.daemon.cli("explain", "enforce.test", "--json", config_first=True)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(json.loads(r.stdout)["postfix"], "OK " + ENFORCE)
        r = self.daemon.cli("cache", "show", "enforce.test", "--json", config_first=True)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(json.loads(r.stdout)["action"], "sts-enforce")
        r = self.daemon.cli("check-config", config_first=True)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn(str(self.daemon.config_path), r.stdout)

    def test_cache_after_the_command(self) -> None:
        """`mxpolicyd cache show DOMAIN --config FILE` asks FILE's control socket."""
        self.daemon.cli("query", "enforce.test")
        r = self.daemon.cli("cache", "show", "enforce.test", "--json")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(json.loads(r.stdout)["action"], "sts-enforce")

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


class DaemonLogTests(IntegrationTestCase):
    """What a daemon logs from start to SIGTERM: its own lines, once, no Twisted chatter."""

    def test_start_and_stop_lines(self) -> None:
        """A started and stopped daemon says where it listens and that it stopped, once each."""
        daemon = self.world.new_daemon(
            None, {"metrics": {"listen": ["tcp:0:interface=127.0.0.1"]}}
        ).start()
        self.assertEqual(daemon.postmap("[192.0.2.1]").code, 1)
        self.assertEqual(daemon.stop(), 0)
        lines = daemon.log_text().splitlines()
        chatter = [line for line in lines if re.search(
            r"starting on|Port .* Closed|Main loop terminated|shutting down", line)]
        self.assertEqual(chatter, [])
        serving = [line for line in lines if " serving socketmap on " in line]
        self.assertEqual(len(serving), 1, lines)
        self.assertIn(daemon.config["socketmap"]["listen"][0], serving[0])
        self.assertIn("metrics on tcp:0:interface=127.0.0.1", serving[0])
        self.assertEqual(
            [line for line in lines if "received SIGTERM" in line or line.endswith("stopped")],
            ["mxpolicyd received SIGTERM: closing the listeners and flushing the store",
             "mxpolicyd stopped"],
        )
