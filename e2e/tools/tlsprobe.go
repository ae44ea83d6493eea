// tlsprobe: a TLS and HTTP client built on Go's crypto/tls and net/http, for the
// conformance tests (docs/conformance.md). Go's TLS stack is stricter than rustls in
// places OpenSSL is not (CertificateRequest contents, extension order, ALPN rules), and
// its HTTP/2 client checks framing and headers, so Berth's listeners must satisfy it too.
//
//	tlsprobe -connect ADDR [-servername N] -ca FILE [-cert F -key F] [-alpn a,b]
//	         [-tls 1.2|1.3] [-noname] [-send TEXT]    raw TLS, then TEXT, print the reply
//	tlsprobe -url URL -connect ADDR ... [-h2]          one GET with net/http
//
// It prints `version=... alpn=... verified=...` then the first line of the reply and
// exits 1 on any failure, with Go's own error text.
package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"time"
)

func main() {
	connect := flag.String("connect", "", "host:port to dial")
	serverName := flag.String("servername", "", "SNI and the name to verify")
	caFile := flag.String("ca", "", "PEM roots")
	certFile := flag.String("cert", "", "client certificate chain (PEM)")
	keyFile := flag.String("key", "", "client key (PEM)")
	alpn := flag.String("alpn", "", "comma-separated ALPN protocols")
	version := flag.String("tls", "", "1.2 or 1.3 only")
	noName := flag.Bool("noname", false, "verify the chain but not a name (SPIFFE certificates)")
	send := flag.String("send", "", "bytes to write after the handshake (\\r\\n escapes)")
	url := flag.String("url", "", "GET this URL with net/http instead")
	h2 := flag.Bool("h2", false, "with -url: HTTP/2 (ALPN h2), else HTTP/1.1")
	flag.Parse()

	roots := x509.NewCertPool()
	pem, err := os.ReadFile(*caFile)
	fail(err)
	if !roots.AppendCertsFromPEM(pem) {
		fail(errors.New("no certificate in -ca"))
	}
	cfg := &tls.Config{RootCAs: roots, ServerName: *serverName}
	if *certFile != "" {
		pair, err := tls.LoadX509KeyPair(*certFile, *keyFile)
		fail(err)
		cfg.Certificates = []tls.Certificate{pair}
	}
	if *alpn != "" {
		cfg.NextProtos = strings.Split(*alpn, ",")
	}
	switch *version {
	case "1.2":
		cfg.MinVersion, cfg.MaxVersion = tls.VersionTLS12, tls.VersionTLS12
	case "1.3":
		cfg.MinVersion, cfg.MaxVersion = tls.VersionTLS13, tls.VersionTLS13
	}
	if *noName {
		// Go's documented way to verify a chain without a host name.
		cfg.InsecureSkipVerify = true
		cfg.VerifyConnection = func(cs tls.ConnectionState) error {
			if len(cs.PeerCertificates) == 0 {
				return errors.New("no server certificate")
			}
			inter := x509.NewCertPool()
			for _, c := range cs.PeerCertificates[1:] {
				inter.AddCert(c)
			}
			_, err := cs.PeerCertificates[0].Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter})
			return err
		}
	}

	if *url != "" {
		tr := &http.Transport{
			TLSClientConfig: cfg,
			DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
				return (&net.Dialer{}).DialContext(ctx, network, *connect)
			},
			ForceAttemptHTTP2: *h2,
		}
		if !*h2 {
			tr.TLSNextProto = map[string]func(string, *tls.Conn) http.RoundTripper{}
		}
		resp, err := (&http.Client{Transport: tr, Timeout: 10 * time.Second}).Get(*url)
		fail(err)
		body, err := io.ReadAll(resp.Body)
		fail(err)
		state := resp.TLS
		fmt.Printf("version=%s alpn=%s verified=ok\n", name(state.Version), state.NegotiatedProtocol)
		fmt.Printf("%s %s\n%s\n", resp.Proto, resp.Status, body)
		return
	}

	conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 10 * time.Second}, "tcp", *connect, cfg)
	fail(err)
	defer conn.Close()
	state := conn.ConnectionState()
	fmt.Printf("version=%s alpn=%s verified=ok\n", name(state.Version), state.NegotiatedProtocol)
	if *send == "" {
		return
	}
	text := strings.NewReplacer(`\r`, "\r", `\n`, "\n").Replace(*send)
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	_, err = conn.Write([]byte(text))
	fail(err)
	line, err := bufio.NewReader(conn).ReadString('\n')
	fail(err)
	fmt.Print(line)
}

func name(v uint16) string {
	switch v {
	case tls.VersionTLS12:
		return "TLSv1.2"
	case tls.VersionTLS13:
		return "TLSv1.3"
	}
	return fmt.Sprintf("0x%04x", v)
}

func fail(err error) {
	if err != nil {
		fmt.Println("tlsprobe:", err)
		os.Exit(1)
	}
}
