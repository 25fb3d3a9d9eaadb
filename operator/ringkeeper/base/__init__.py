"""Base helpers with no ringkeeper imports: cron grammar, LSNs, time stamps, SQL quoting,
process trees. Every layer may use them; they use no layer."""
