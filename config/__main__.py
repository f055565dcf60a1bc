"""`python -m config` prints the settings table; `--write-readme` puts it into README.md
(between the table's header line and the next blank line)."""
import sys

from config.settings import REPO_ROOT, settings_table_markdown

table = settings_table_markdown()
if sys.argv[1:] == ["--write-readme"]:
    readme = REPO_ROOT / "README.md"
    text = readme.read_text()
    start = text.index("| Variable | Default | Meaning |")
    end = text.index("\n\n", start)
    readme.write_text(text[:start] + table + text[end:])
else:
    print(table)
