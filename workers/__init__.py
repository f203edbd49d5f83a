"""RQ workers and the SMTP engine. Never imports Flask or ``service``."""
