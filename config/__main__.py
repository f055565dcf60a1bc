"""`python -m config` prints the settings table that README.md carries."""
from config.settings import settings_table_markdown

print(settings_table_markdown())
