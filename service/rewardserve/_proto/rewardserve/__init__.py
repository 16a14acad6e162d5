# Generated from protos/ by `make proto` (protos/generate.py). Do not edit.
