# Shared by the benchmark scripts (sourced, not run).

# make_mesh_certs NAME...: in the current directory, a CA (ca.crt, ca.key) and for each
# NAME a P-256 certificate (NAME.crt, NAME.key) with the SPIFFE ID
# spiffe://berth.local/ecs/default/NAME as URI SAN, for Envoy set up as Berth's mesh.
make_mesh_certs() {
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj "/CN=bench CA" \
    -keyout ca.key -out ca.crt 2>/dev/null
  local who
  for who in "$@"; do
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=$who" -keyout "$who.key" -out "$who.csr" 2>/dev/null
    printf 'subjectAltName=URI:spiffe://berth.local/ecs/default/%s\nextendedKeyUsage=serverAuth,clientAuth\n' "$who" > "$who.ext"
    openssl x509 -req -in "$who.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 -extfile "$who.ext" -out "$who.crt" 2>/dev/null
  done
}
