"""Write the JSON Schema of every release record into docs/schemas/<name>.schema.json.

    python scripts/write_schemas.py [--out docs/schemas]

Run it after changing a record model (locopack/release/records/, locopack/export/records.py,
locopack/delta_record.py, locopack/localize/result.py); tests/test_records.py fails while a
schema in docs/schemas/ is stale.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from locopack.release.records.schemas import record_schemas, schema_text
from locopack.storage import atomic_write_text

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "schemas")
    out = parser.parse_args().out
    for name, schema in record_schemas().items():
        path = atomic_write_text(out / f"{name}.schema.json", schema_text(schema))
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
