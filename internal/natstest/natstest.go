// Package natstest starts a private NATS cluster for tests: real
// nats-server processes (Debian's nats-server, installed by
// scripts/deps.sh), each on free ports of 127.0.0.1 with --cluster and
// --routes to the others, stopped when the test ends.
//
//	c := natstest.StartCluster(t, 3)
//	opts.NATS = c.URLs() // every node; or c.Nodes[i].URL for one
//
// Start waits until every node has a route to every other one, so a
// subscription made on one node is soon seen on the others. A test that
// cannot find nats-server fails with a message saying how to install it;
// it does not skip.
package natstest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/rmb-go/rmb/internal/wait"
)

// ErrNoNATS says nats-server is not installed.
var ErrNoNATS = errors.New("nats-server not found in PATH: run `make test` (scripts/deps.sh installs it with apt-get) or `apt-get install nats-server`")

// Node is one running nats-server.
type Node struct {
	Name    string
	URL     string // nats://127.0.0.1:port, for clients
	Monitor string // http://127.0.0.1:port, the monitoring endpoint
	dir     string
	args    []string
	cmd     *exec.Cmd
}

// Cluster is a set of nodes routed to each other.
type Cluster struct {
	Nodes []*Node
}

// URLs are the client URLs of every node.
func (c *Cluster) URLs() []string {
	out := make([]string, len(c.Nodes))
	for i, n := range c.Nodes {
		out[i] = n.URL
	}
	return out
}

// StartCluster starts n routed nodes and registers their stop with
// t.Cleanup.
func StartCluster(t testing.TB, n int) *Cluster {
	t.Helper()
	c, err := Run(t.TempDir(), n)
	if err != nil {
		t.Fatalf("natstest: %v", err)
	}
	t.Cleanup(c.Stop)
	return c
}

// Run starts n nodes keeping their logs in dir and waits for every route.
// The caller stops the cluster.
func Run(dir string, n int) (*Cluster, error) {
	bin, err := exec.LookPath("nats-server")
	if err != nil {
		return nil, ErrNoNATS
	}
	ports, err := freePorts(3 * n)
	if err != nil {
		return nil, err
	}
	c := &Cluster{}
	routes := ""
	for i := range n {
		if i > 0 {
			routes += ","
		}
		routes += "nats://127.0.0.1:" + strconv.Itoa(ports[3*i+1])
	}
	for i := range n {
		client, cluster, monitor := ports[3*i], ports[3*i+1], ports[3*i+2]
		nd := &Node{
			Name:    fmt.Sprintf("n%d", i+1),
			URL:     "nats://127.0.0.1:" + strconv.Itoa(client),
			Monitor: "http://127.0.0.1:" + strconv.Itoa(monitor),
			dir:     filepath.Join(dir, fmt.Sprintf("n%d", i+1)),
		}
		if err := os.MkdirAll(nd.dir, 0o700); err != nil {
			return nil, err
		}
		nd.args = []string{
			"-a", "127.0.0.1", "-p", strconv.Itoa(client), "-m", strconv.Itoa(monitor),
			"-n", nd.Name, "--cluster_name", "rmbtest",
			"--cluster", "nats://127.0.0.1:" + strconv.Itoa(cluster), "--routes", routes,
			"-l", filepath.Join(nd.dir, "nats.log"),
		}
		c.Nodes = append(c.Nodes, nd)
		if err := nd.start(bin); err != nil {
			c.Stop()
			return nil, err
		}
	}
	for _, nd := range c.Nodes {
		if err := nd.waitRoutes(n - 1); err != nil {
			c.Stop()
			return nil, err
		}
	}
	return c, nil
}

func (nd *Node) start(bin string) error {
	nd.cmd = exec.Command(bin, nd.args...)
	nd.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := nd.cmd.Start(); err != nil {
		return fmt.Errorf("start nats-server: %w", err)
	}
	return nil
}

// waitRoutes polls /routez until the node has want routes (30 s at most:
// a loaded machine).
func (nd *Node) waitRoutes(want int) error {
	err := wait.For(context.Background(), 30*time.Second, func() error {
		got, err := nd.Routes()
		if err != nil {
			return err
		}
		if got < want {
			return fmt.Errorf("%d of %d routes", got, want)
		}
		return nil
	})
	if err != nil {
		log, _ := os.ReadFile(filepath.Join(nd.dir, "nats.log"))
		return fmt.Errorf("nats node %s: %v; log:\n%s", nd.Name, err, log)
	}
	return nil
}

// Routes returns the number of routes the node has now.
func (nd *Node) Routes() (int, error) {
	c := http.Client{Timeout: 2 * time.Second}
	resp, err := c.Get(nd.Monitor + "/routez")
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	var rz struct {
		NumRoutes int `json:"num_routes"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&rz); err != nil {
		return 0, err
	}
	return rz.NumRoutes, nil
}

// Kill stops the node with SIGKILL, as a crash would.
func (nd *Node) Kill() {
	if nd.cmd != nil && nd.cmd.Process != nil {
		nd.cmd.Process.Kill()
		nd.cmd.Wait()
		nd.cmd = nil
	}
}

// Stop stops every node; calling it twice is harmless.
func (c *Cluster) Stop() {
	for _, nd := range c.Nodes {
		if nd.cmd != nil && nd.cmd.Process != nil {
			nd.cmd.Process.Signal(syscall.SIGTERM)
			done := make(chan struct{})
			go func() { nd.cmd.Wait(); close(done) }()
			select {
			case <-done:
			case <-time.After(5 * time.Second):
				nd.cmd.Process.Kill()
				<-done
			}
			nd.cmd = nil
		}
	}
}

// freePorts reserves n distinct free ports of 127.0.0.1 (released before
// returning: a small race with other programs, as in redistest).
func freePorts(n int) ([]int, error) {
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	out := make([]int, 0, n)
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		ls = append(ls, l)
		out = append(out, l.Addr().(*net.TCPAddr).Port)
	}
	return out, nil
}
