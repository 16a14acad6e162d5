"""Code generated from protos/ by `make proto` (protos/generate.py); do not edit by hand."""

from google.protobuf import descriptor_pool

# inference.* (KServe V2) lives in its own pool: tritonclient defines the same names in the
# default pool, which refuses duplicates. See protos/generate.py.
KSERVE_POOL = descriptor_pool.DescriptorPool()
