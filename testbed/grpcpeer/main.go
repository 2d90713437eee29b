// grpcpeer: the two sides of the Go gRPC end-to-end test (tests/resolver_test.ts),
// built by the test with Debian's Go packages in GOPATH mode; never shipped.
//
//	grpcpeer serve ADDR            a gRPC health server (SERVING) on ADDR; prints "serving ADDR"
//	grpcpeer client ETCD TARGET    dials TARGET (etcd:///<prefix>/<service>/) through etcd's own
//	                               resolver, round robin, and sends a health check every 50 ms,
//	                               printing "ok <peer address>" or "fail <error>" for each
package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"strings"
	"time"

	"go.etcd.io/etcd/clientv3"
	"go.etcd.io/etcd/clientv3/naming/resolver"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/peer"
)

func main() {
	if len(os.Args) < 3 {
		fmt.Fprintln(os.Stderr, "usage: grpcpeer serve ADDR | grpcpeer client ETCD TARGET")
		os.Exit(2)
	}
	switch os.Args[1] {
	case "serve":
		serve(os.Args[2])
	case "client":
		if len(os.Args) != 4 {
			fmt.Fprintln(os.Stderr, "usage: grpcpeer client ETCD TARGET")
			os.Exit(2)
		}
		client(os.Args[2], os.Args[3])
	default:
		fmt.Fprintf(os.Stderr, "grpcpeer: unknown command %q\n", os.Args[1])
		os.Exit(2)
	}
}

func serve(addr string) {
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		fmt.Fprintln(os.Stderr, "grpcpeer:", err)
		os.Exit(1)
	}
	s := grpc.NewServer()
	healthpb.RegisterHealthServer(s, health.NewServer()) // "" is SERVING
	fmt.Println("serving", lis.Addr())
	if err := s.Serve(lis); err != nil {
		fmt.Fprintln(os.Stderr, "grpcpeer:", err)
		os.Exit(1)
	}
}

func client(etcd, target string) {
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{etcd}, DialTimeout: 5 * time.Second})
	if err != nil {
		fmt.Fprintln(os.Stderr, "grpcpeer:", err)
		os.Exit(1)
	}
	builder, err := resolver.NewBuilder(cli)
	if err != nil {
		fmt.Fprintln(os.Stderr, "grpcpeer:", err)
		os.Exit(1)
	}
	conn, err := grpc.Dial(target, grpc.WithResolvers(builder), grpc.WithInsecure(),
		grpc.WithDefaultServiceConfig(`{"loadBalancingPolicy":"round_robin"}`))
	if err != nil {
		fmt.Fprintln(os.Stderr, "grpcpeer:", err)
		os.Exit(1)
	}
	health := healthpb.NewHealthClient(conn)
	fmt.Println("dialed", target)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		var p peer.Peer
		_, err := health.Check(ctx, &healthpb.HealthCheckRequest{}, grpc.Peer(&p))
		cancel()
		if err != nil {
			fmt.Println("fail", strings.ReplaceAll(err.Error(), "\n", " "))
		} else {
			fmt.Println("ok", p.Addr)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
