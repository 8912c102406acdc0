"""Tests for L{mxpolicyd.config.load}'s conf.d fragments merged over the main file."""

from __future__ import annotations

import os

from twisted.trial.unittest import SynchronousTestCase

from mxpolicyd.config.load import ConfigError, load

ENV = {"HOME": "/home/x"}


class ConfDirTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.directory = os.path.abspath(self.mktemp())
        os.makedirs(os.path.join(self.directory, "conf.d"))
        self.path = self.write(
            "mxpolicyd.toml",
            '[socketmap]\nlisten = ["tcp:1234"]\nidle_timeout = 5.0\n'
            "[mta_sts]\nblock_private = true\n",
        )

    def write(self, name: str, text: str) -> str:
        path = os.path.join(self.directory, name)
        with open(path, "w") as f:
            f.write(text)
        return path

    def test_no_fragments(self) -> None:
        """An empty conf.d changes nothing, and the source is the file alone."""
        config = load(self.path, ENV)
        self.assertEqual(config.socketmap.listen, ("tcp:1234",))
        self.assertEqual(config.source, self.path)

    def test_merged_in_name_order(self) -> None:
        """Fragments merge table by table in name order; a later value wins, untouched keys stay."""
        self.write("conf.d/20-b.toml", '[socketmap]\nlisten = ["tcp:3"]\n')
        self.write("conf.d/10-a.toml",
                   '[socketmap]\nlisten = ["tcp:2", "tcp:22"]\n[dns]\nnameservers = ["127.0.0.1"]\n')
        self.write("conf.d/notes.txt", "[socketmap\n")
        config = load(self.path, ENV)
        self.assertEqual(config.socketmap.listen, ("tcp:3",))
        self.assertEqual(config.socketmap.idle_timeout, 5.0)
        self.assertTrue(config.mta_sts.block_private)
        self.assertEqual(config.dns.nameservers, ("127.0.0.1",))
        self.assertEqual(
            config.source, self.path + " + conf.d/10-a.toml, conf.d/20-b.toml"
        )

    def test_profile_tables_merge(self) -> None:
        """A fragment can change one key of a profile table the main file defines."""
        self.write("mxpolicyd.toml", "[profiles.mine]\nservername = false\n")
        self.write("conf.d/x.toml", "[profiles.mine]\ntlsrpt = true\n")
        profile = load(self.path, ENV).profiles["mine"]
        self.assertEqual((profile.servername, profile.tlsrpt), (False, True))

    def test_bad_key_names_fragment(self) -> None:
        """A bad value in a fragment is reported with the fragment's path and the key."""
        bad = self.write("conf.d/50-bad.toml", '[dns]\nnameservers = ["resolver.lan"]\n')
        message = str(self.assertRaises(ConfigError, load, self.path, ENV))
        self.assertTrue(message.startswith(bad + ": dns.nameservers"), message)

    def test_bad_toml_names_fragment(self) -> None:
        """A fragment that is not TOML is reported with its path."""
        bad = self.write("conf.d/50-bad.toml", "[dns\n")
        message = str(self.assertRaises(ConfigError, load, self.path, ENV))
        self.assertTrue(message.startswith(bad + ": not valid TOML"), message)

    def test_main_file_blamed_first(self) -> None:
        """An error in the main file names the main file even when fragments would fix it."""
        self.write("mxpolicyd.toml", "[dns]\nport = 0\n")
        self.write("conf.d/fix.toml", "[dns]\nport = 53\n")
        message = str(self.assertRaises(ConfigError, load, self.path, ENV))
        self.assertTrue(message.startswith(self.path + ": dns.port"), message)
