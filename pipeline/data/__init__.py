"""The example table: canonical schema, readers with quarantine, and the bundled math data."""

from pipeline.core.hashing import fingerprint
from pipeline.data.examples import (
    QUARANTINE_SCHEMA,
    SCHEMA,
    DataError,
    example_id,
    ingest,
    iter_source,
)
from pipeline.data.math import final_answer, load_math, normalize_number

__all__ = ["QUARANTINE_SCHEMA", "SCHEMA", "DataError", "example_id", "final_answer", "fingerprint", "ingest", "iter_source",
           "load_math", "normalize_number"]
