"""One module per stage of docs/method.md §1. Stage code never touches the run directory or knows
how it is executed: it gets its inputs as rows and a `StageContext`, and returns rows."""
