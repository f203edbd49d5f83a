"""The ``smtpcheck`` command: ``dev``, ``api``, ``worker``, ``check``, ``list``, ``cancel``.

A composition root above ``service`` and ``workers``: it is the only package
that uses both, and neither imports it. They are imported lazily, inside the
command that needs them, so ``smtpcheck check`` against a remote service
never loads the SMTP engine and ``smtpcheck worker`` never loads Flask; the
parser imports each command's module only when it runs. The client commands
validate a request with the service's own schema, which loads without Flask,
Redis or RQ (tests/test_cli.py keeps it so).
One module per noun: ``parser`` (the command line), ``main`` (the entry
point), ``errors`` (exit statuses), ``api`` (the gunicorn launcher) and
``gunicorn_config``, ``worker``, ``dev`` (the process supervisor) and
``devlock`` (its lock, pid file and leftover scan), ``request`` (the check
request built from options), ``client`` (HTTP), ``events`` (the event
stream, resumed), ``terminal`` (colours and the spinner), ``check``,
``listing`` and ``cancel``.
"""
