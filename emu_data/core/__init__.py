"""The records, their files and the rules every part shares."""
