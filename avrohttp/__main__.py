"""`python -m avrohttp`: serve MODULE:ATTR, describe URL, call URL MESSAGE JSON (avrohttp.tools).

Try it: `python -m avrohttp --help`.
"""

from avrohttp.tools import main

if __name__ == "__main__":
    raise SystemExit(main())
