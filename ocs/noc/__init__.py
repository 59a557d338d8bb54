"""NOC: X.733 alarms (raise, repeat, clear, flapping, operator ack/clear) and the alarm
stream. Sources (SNMP traps, the server's own health checks) hand in notifications."""
