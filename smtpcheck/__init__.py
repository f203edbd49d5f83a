"""smtpcheck: remote SMTP checks behind a REST API.

This package holds what both sides share without sharing code paths: the one
configuration module, the sealing of secrets for the queue, the text form of
a transcript, and the ``smtpcheck`` command. ``service/`` (the Flask API) and
``workers/`` (the RQ workers and the SMTP engine) never import each other.
"""
