"""The network management system: polling elements over SNMP, figures, thresholds."""
