"""``compactrec data inspect PATH``: what a data folder holds, as the trainer will see it.

Reads ``_manifest.json`` and every shard's Parquet footer (no row data): the label, dense
and sparse columns with their Parquet types and cardinalities, each split's files and rows
(the manifest's count beside the footers' sum), and the manifest's statistics. Columns the
manifest names but a shard lacks, or types the reader would refuse, are reported as
problems, and the command exits 1.
"""

from __future__ import annotations

from typing import Dict, List, Tuple

from compactrec.data.reader import fs
from compactrec.data.reader.manifest import MANIFEST_NAME, read_manifest


def inspect_data(path: str) -> Tuple[str, List[str]]:
    """(the report, the problems found); ``path`` is a local folder or a URI."""
    from compactrec.data.reader.columns import DataError, check_schema

    manifest = read_manifest(path)
    schema = manifest.schema
    problems: List[str] = []
    types: Dict[str, str] = {}
    split_rows: List[Tuple[str, int, int, int]] = []  # split, files, manifest rows, footer rows
    for split, info in manifest.splits.items():
        footer_rows = 0
        for rel in info.files:
            file = fs.join(path, rel)
            try:
                pf = fs.open_parquet(file)
            except Exception as e:  # missing, truncated or not Parquet
                problems.append(f"{file}: cannot read its footer: {e}")
                continue
            footer_rows += pf.metadata.num_rows
            arrow = pf.schema_arrow
            for field in arrow:
                types.setdefault(field.name, str(field.type))
            try:
                check_schema(arrow, schema, file)
            except DataError as e:
                problems.append(str(e))
        if footer_rows != info.rows:
            problems.append(f"split '{split}': the manifest says {info.rows} rows, the shards' footers {footer_rows}")
        split_rows.append((split, len(info.files), info.rows, footer_rows))

    lines = [f"{fs.join(path, MANIFEST_NAME)}"]
    lines.append(f"label: {schema.label} ({types.get(schema.label, '?')})")
    dense_types = sorted({types.get(n, "?") for n in schema.dense})
    lines.append(f"dense: {len(schema.dense)} columns ({', '.join(dense_types) or '-'}): {_names(list(schema.dense))}")
    multi = sum(f.multi_hot for f in schema.sparse)
    lines.append(f"sparse: {len(schema.sparse)} features ({multi} multi-hot), {sum(schema.cardinalities):,} ids in all")
    width = max([len(f.name) for f in schema.sparse] + [7])
    lines.append(f"  {'feature':<{width}}  {'cardinality':>12}  {'bags':>9}  parquet type")
    for f in schema.sparse:
        lines.append(f"  {f.name:<{width}}  {f.cardinality:>12,}  {'multi-hot' if f.multi_hot else 'one-hot':>9}  {types.get(f.name, '?')}")
    lines.append("splits:")
    for split, files, rows, footer in split_rows:
        check = "" if rows == footer else f"  (footers: {footer:,})"
        lines.append(f"  {split}: {rows:,} rows in {files} files{check}")
    for key, value in manifest.stats.items():
        if isinstance(value, dict) and all(isinstance(v, (int, float)) for v in value.values()):
            lines.append(f"stats.{key}: " + ", ".join(f"{k} {v:.4g}" for k, v in value.items()))
        elif key != "generator":
            lines.append(f"stats.{key}: ({type(value).__name__})")
    if manifest.ranking is not None:
        lines.append(f"ranking: side tables for {', '.join(sorted(manifest.ranking))}")
    return "\n".join(lines), problems


def _names(names: List[str], show: int = 6) -> str:
    if len(names) <= show:
        return ", ".join(names) or "-"
    return ", ".join(names[: show // 2]) + ", ..., " + ", ".join(names[-(show // 2):])
