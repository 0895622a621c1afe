"""Reports: data cards and `pipeline inspect` over runs and cards."""
