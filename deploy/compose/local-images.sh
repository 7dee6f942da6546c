#!/usr/bin/env bash
# Builds the service images of deploy/compose/compose.yaml from the distributions deploy/local
# already uses, for machines that cannot pull the official ones, and prints the variables that
# make the compose file use them:
#
#   eval "$(deploy/compose/local-images.sh)"
#
#   sluice-local/postgres:15           Debian's postgresql-15
#   sluice-local/kafka:<version>       the Kafka jars from Maven Central (deploy/local/kafka.sh fetch)
#   sluice-local/elasticsearch:<ver>   the integ-test zip (deploy/local/elasticsearch.sh fetch)
#   sluice-local/opensearch:<ver>      the integ-test zip and its modules (deploy/local/opensearch3.sh fetch)
#
# Kafka, Elasticsearch and OpenSearch run on the host's JDK 21+ (sluice-local/jdk). Images already built are
# kept; --force builds them again.
set -euo pipefail
SERVICE=local-images
# shellcheck source=../docker/lib.sh disable=SC1091
. "$(dirname "$0")/../docker/lib.sh"
IMAGES_DIR="$REPO_DIR/deploy/compose/local-images"
FORCE=${1:-}

"$DEPLOY_DOCKER_DIR/base-images.sh" >&2
kafka_libs=$("$DEPLOY_LOCAL_DIR/kafka.sh" fetch)
es_home=$("$DEPLOY_LOCAL_DIR/elasticsearch.sh" fetch)
os_home=$("$DEPLOY_LOCAL_DIR/opensearch3.sh" fetch)
kafka_version=$(basename "$(dirname "$kafka_libs")")
es_version=${es_home##*-}
os_version=${os_home##*-}

# Kafka's own scripts (kafka-broker-api-versions.sh) live in kafka-tools, which the broker's
# jars do not include.
tools_dir="$SLUICE_CACHE_DIR/kafka/tools-$kafka_version"
if [ ! -s "$tools_dir/kafka-tools-$kafka_version.jar" ]; then
  command -v mvn >/dev/null 2>&1 || apt_install maven
  log "fetching org.apache.kafka:kafka-tools:$kafka_version from Maven Central"
  maven_fetch "org.apache.kafka:kafka-tools:$kafka_version" "$tools_dir"
fi

# stage DIR SOURCE...: a build context made of the image's directory and, as hard links where
# the filesystem allows, the distribution files.
stage() {
  local dir=$1
  shift
  rm -rf "$dir"
  mkdir -p "$dir"
  cp -a "$IMAGES_DIR/$(basename "$dir")/." "$dir/"
  while [ $# -gt 0 ]; do
    mkdir -p "$(dirname "$dir/$2")"
    cp -al "$1" "$dir/$2" 2>/dev/null || cp -a "$1" "$dir/$2"
    shift 2
  done
}

# build NAME TAG [SOURCE DEST]...
build() {
  local name=$1 tag=$2
  shift 2
  if image_exists "$tag" && [ "$FORCE" != --force ]; then
    log "$tag is there"
    return 0
  fi
  local t0=$SECONDS ctx="$SLUICE_STATE_DIR/compose-images/$name"
  stage "$ctx" "$@"
  log "building $tag"
  docker build -q -t "$tag" "$ctx" >/dev/null
  rm -rf "$ctx"
  log "built $tag in $((SECONDS - t0))s"
}

jdk=$(java_home_at_least 21) || die "no JDK 21+ in /usr/lib/jvm (Elasticsearch 9 needs one)"
build jdk sluice-local/jdk "$jdk" jdk
build postgres sluice-local/postgres:15
build kafka "sluice-local/kafka:$kafka_version" "$kafka_libs" libs \
  "$tools_dir/kafka-tools-$kafka_version.jar" "libs/kafka-tools-$kafka_version.jar"
build elasticsearch "sluice-local/elasticsearch:$es_version" "$es_home" elasticsearch
build opensearch "sluice-local/opensearch:$os_version" "$os_home" opensearch

cat <<EOT
export POSTGRES_IMAGE=sluice-local/postgres:15
export KAFKA_IMAGE=sluice-local/kafka:$kafka_version
export ELASTICSEARCH_IMAGE=sluice-local/elasticsearch:$es_version
export OPENSEARCH_IMAGE=sluice-local/opensearch:$os_version
EOT
