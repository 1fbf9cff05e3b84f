// Command fakebin stands in for cloak-agent, cloak-aa and runc in tests: a
// small static binary that answers `--version` like runc.
package main

import "fmt"

func main() {
	fmt.Println("runc version 1.4.3-fake")
}
