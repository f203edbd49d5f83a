"""The ``smtpcheck`` command: ``dev``, ``api``, ``worker`` and ``check``.

A composition root above ``service`` and ``workers``: it is the only package
that uses both, and neither imports it. They are imported lazily, inside the
command that needs them, so ``smtpcheck check`` against a remote service
never loads the SMTP engine and ``smtpcheck worker`` never loads Flask.
One module per noun: ``parser`` (the command line), ``main`` (the entry
point), ``api`` (the gunicorn launcher), ``worker``, ``dev`` (the process
supervisor) and ``devlock`` (its lock and pid file), ``request`` (the check
request built from options), ``client`` (HTTP) and ``check``.
"""
