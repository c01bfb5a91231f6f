// Command vcsim runs govmomi's vCenter simulator on a loopback port, for the
// vic-channel tests and lab. It is built by scripts/build-vcsim from Debian's
// golang-github-vmware-govmomi-dev source; no binary is committed.
//
// It prints one line "VCSIM_URL=<url>" on stdout once the server listens (also
// written to -url-file if given), then serves until SIGINT/SIGTERM or until its
// stdin reaches EOF when -stdin-eof is set (so a parent that dies takes it along).
package main

import (
	"flag"
	"fmt"
	"io"
	"io/ioutil"
	"log"
	"net/url"
	"os"
	"os/signal"
	"syscall"

	"github.com/vmware/govmomi/simulator"
)

func main() {
	listen := flag.String("l", "127.0.0.1:0", "listen address (host:port); port 0 picks one")
	user := flag.String("user", "vic", "username")
	pass := flag.String("pass", "vic", "password")
	vms := flag.Int("vm", 2, "VMs per resource pool")
	hosts := flag.Int("host", 1, "hosts per cluster")
	autostart := flag.Bool("autostart", true, "power on the model's VMs")
	urlFile := flag.String("url-file", "", "also write the service URL to this file")
	stdinEOF := flag.Bool("stdin-eof", false, "exit when stdin reaches EOF")
	flag.Parse()

	model := simulator.VPX()
	model.Machine = *vms
	model.ClusterHost = *hosts
	model.Autostart = *autostart
	defer model.Remove()
	if err := model.Create(); err != nil {
		log.Fatalf("vcsim: create model: %v", err)
	}
	model.Service.Listen = &url.URL{Host: *listen, User: url.UserPassword(*user, *pass)}
	srv := model.Service.NewServer()
	defer srv.Close()

	line := fmt.Sprintf("VCSIM_URL=%s\n", srv.URL.String())
	if *urlFile != "" {
		tmp := *urlFile + ".tmp"
		if err := ioutil.WriteFile(tmp, []byte(line), 0o600); err != nil {
			log.Fatalf("vcsim: %v", err)
		}
		if err := os.Rename(tmp, *urlFile); err != nil {
			log.Fatalf("vcsim: %v", err)
		}
	}
	os.Stdout.WriteString(line)

	done := make(chan struct{}, 1)
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	go func() { <-sigs; done <- struct{}{} }()
	if *stdinEOF {
		go func() { _, _ = io.Copy(ioutil.Discard, os.Stdin); done <- struct{}{} }()
	}
	<-done
}
