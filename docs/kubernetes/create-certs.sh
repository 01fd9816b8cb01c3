#!/usr/bin/env bash
# docs/kubernetes/create-certs.sh: the certificates for the mutual TLS between buildopt and the buildkitd fleet of
# buildkitd.yaml, with openssl:
#   certs/ca.pem, ca.key        a CA that signs both sides (keep ca.key offline)
#   certs/daemon.pem, .key      the daemons' certificate: subjectAltName *.buildkitd.NAMESPACE.svc.cluster.local
#                               (one certificate for every pod of the StatefulSet, present and future)
#   certs/client.pem, .key      buildopt's client certificate (extendedKeyUsage clientAuth)
#   certs/buildkitd-certs.yaml  the daemons' Secret (ca.pem, cert.pem, key.pem), for kubectl apply
# The client key is what lets a CI runner use the fleet: store it as a CI secret, never in the repository.
set -eu -o pipefail

: "${NAMESPACE:=buildkit}"
: "${DAYS:=365}"
: "${OUT:=certs}"

mkdir -p "$OUT"; cd "$OUT"
key() { openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes "$@"; }

key -x509 -keyout ca.key -out ca.pem -subj "/CN=buildkitd fleet CA" -days "$DAYS"

key -keyout daemon.key -out daemon.csr -subj "/CN=buildkitd"
printf 'subjectAltName=DNS:*.buildkitd.%s.svc.cluster.local,DNS:*.buildkitd.%s.svc\nextendedKeyUsage=serverAuth\n' \
  "$NAMESPACE" "$NAMESPACE" > daemon.ext
openssl x509 -req -in daemon.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out daemon.pem -days "$DAYS" -extfile daemon.ext

key -keyout client.key -out client.csr -subj "/CN=buildopt"
printf 'extendedKeyUsage=clientAuth\n' > client.ext
openssl x509 -req -in client.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out client.pem -days "$DAYS" -extfile client.ext

rm -f ./*.csr ./*.ext
kubectl create secret generic buildkitd-certs --namespace "$NAMESPACE" --dry-run=client -o yaml \
  --from-file=ca.pem=ca.pem --from-file=cert.pem=daemon.pem --from-file=key.pem=daemon.key > buildkitd-certs.yaml
echo "wrote $(pwd)"
