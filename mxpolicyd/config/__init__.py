"""
The configuration: one TOML file (and its conf.d drop-ins) read, checked as
a whole and turned into plain settings, with errors that name the file and
the key.  Also the administrator's domain entries, checked against Postfix's
policy grammar, the watch that warns before they end, and the import of
postfix-mta-sts-resolver's YAML.

May import: answers (profiles), policy (the administrator's rules as data),
evidence (names, MX patterns), ops.
"""
