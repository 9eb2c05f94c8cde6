"""pytest plugin of ead-sdk (entry point ``pytest11``): fixtures for policy authors."""
