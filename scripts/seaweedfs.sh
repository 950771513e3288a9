#!/usr/bin/env bash
# A local S3 server for development: SeaweedFS on 127.0.0.1:8333, bucket `batches`.
#   scripts/seaweedfs.sh [DATA_DIR]
# then: export AWS_ENDPOINT_URL=http://127.0.0.1:8333 AWS_ACCESS_KEY_ID=dev \
#              AWS_SECRET_ACCESS_KEY=devsecret AWS_REGION=us-east-1 BATCH_STORAGE=s3://batches/dev
set -euo pipefail
cd "$(dirname "$0")/.."
dir="${1:-data-s3}"
mkdir -p "$dir"
export AWS_ACCESS_KEY_ID="${AWS_ACCESS_KEY_ID:-dev}" AWS_SECRET_ACCESS_KEY="${AWS_SECRET_ACCESS_KEY:-devsecret}"
export S3_BUCKET=batches
exec .venv/bin/weed mini -dir="$dir" -ip=127.0.0.1 -ip.bind=127.0.0.1 -s3.port=8333 \
  -admin.ui=false -webdav=false -s3.port.iceberg=0 -s3.port.lance=0
