// Command relay is the Relay365 daemon and its operator commands.
// See internal/relaycmd; `relay help` lists the commands.
package main

import (
	"os"

	"relay365/internal/relaycmd"
)

func main() { os.Exit(relaycmd.Main(os.Args[1:])) }
