"""Load generators for exai-broker and the tables they print (never collected by pytest)."""
