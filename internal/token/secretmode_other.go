//go:build !unix

package token

import "io/fs"

func mountedSecret(fs.FileInfo) bool { return false }
