// Command tls-terminator stands in for a standalone buildkitd listening on tcp:// in buildopt's integration tests.
//
// It accepts TCP connections the way buildkitd's gRPC server does (Go's crypto/tls; with -cacert, client
// certificates are required and verified against that CA: tls.RequireAndVerifyClientCert, as buildkitd sets up
// for --tlscacert) and forwards each one to dockerd's embedded BuildKit: on the Docker socket, `POST /grpc` with
// `Upgrade: h2c` answers 101, after which the connection is raw HTTP/2 to BuildKit's gRPC server. The TLS
// behaviour (alerts, when they are sent, v1 certificates accepted) is therefore Go's, not that of the Rust TLS
// stack under test.
//
// Without -cert it listens on plain TCP, like `buildkitd --addr tcp://...` without TLS.
//
// It prints `listening on HOST:PORT` on stdout once it accepts connections, and runs until killed.
//
// Standard library only, so it builds offline: see hack/tls-terminator/build.
package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"sync"
	"time"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:0", "address to listen on (loopback only in tests)")
	certFile := flag.String("cert", "", "server certificate chain (PEM); empty: plain TCP")
	keyFile := flag.String("key", "", "server private key (PEM)")
	caFile := flag.String("cacert", "", "CA (PEM) client certificates must chain to; empty: no client certificate is asked for")
	tls12 := flag.Bool("tls12", false, "negotiate TLS 1.2 at most (default: up to TLS 1.3, like buildkitd)")
	dockerSock := flag.String("docker-sock", "", "Docker socket whose embedded BuildKit (POST /grpc) serves the connections")
	flag.Parse()
	log.SetPrefix("tls-terminator: ")
	if *dockerSock == "" {
		log.Fatal("-docker-sock is required")
	}

	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		log.Fatal(err)
	}
	if *certFile != "" {
		config, err := serverConfig(*certFile, *keyFile, *caFile, *tls12)
		if err != nil {
			log.Fatal(err)
		}
		ln = tls.NewListener(ln, config)
	}
	fmt.Printf("listening on %s\n", ln.Addr())
	os.Stdout.Sync()

	for {
		c, err := ln.Accept()
		if err != nil {
			log.Fatal(err)
		}
		go serve(c, *dockerSock)
	}
}

// serverConfig is what buildkitd's loadTLSConfig builds: the server key pair, ALPN h2 (grpc-go adds it), and,
// with a CA, mandatory client certificates verified against it.
func serverConfig(certFile, keyFile, caFile string, tls12 bool) (*tls.Config, error) {
	pair, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("server key pair: %w", err)
	}
	config := &tls.Config{
		Certificates: []tls.Certificate{pair},
		NextProtos:   []string{"h2"},
		MinVersion:   tls.VersionTLS12,
	}
	if tls12 {
		config.MaxVersion = tls.VersionTLS12
	}
	if caFile != "" {
		pem, err := os.ReadFile(caFile)
		if err != nil {
			return nil, err
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("no certificate in %s", caFile)
		}
		config.ClientCAs = pool
		config.ClientAuth = tls.RequireAndVerifyClientCert
	}
	return config, nil
}

func serve(c net.Conn, dockerSock string) {
	defer c.Close()
	// Finish the handshake before reaching BuildKit, as grpc-go's server does (credentials.ServerHandshake):
	// a client whose certificate is refused gets the TLS alert and a closed connection, and nothing else.
	if tc, ok := c.(*tls.Conn); ok {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		err := tc.HandshakeContext(ctx)
		cancel()
		if err != nil {
			log.Printf("handshake with %s: %v", c.RemoteAddr(), err)
			return
		}
	}
	d, err := net.Dial("unix", dockerSock)
	if err != nil {
		log.Printf("dial %s: %v", dockerSock, err)
		return
	}
	defer d.Close()
	if _, err := io.WriteString(d, "POST /grpc HTTP/1.1\r\nHost: docker\r\nConnection: Upgrade\r\nUpgrade: h2c\r\nContent-Length: 0\r\n\r\n"); err != nil {
		log.Printf("upgrade request: %v", err)
		return
	}
	// The reader may hold bytes past the 101 head: they are HTTP/2 from BuildKit, so copy from it, not from d.
	br := bufio.NewReader(d)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		log.Printf("upgrade response: %v", err)
		return
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		log.Printf("dockerd refused the upgrade: %s", resp.Status)
		return
	}

	// Either direction ending ends the connection: closing both unblocks the other copy.
	var once sync.Once
	done := make(chan struct{})
	finish := func() {
		once.Do(func() {
			c.Close()
			d.Close()
			close(done)
		})
	}
	go func() {
		io.Copy(d, c)
		finish()
	}()
	go func() {
		io.Copy(c, br)
		finish()
	}()
	<-done
}
