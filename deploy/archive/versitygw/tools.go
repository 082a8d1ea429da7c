//go:build tools

// Pins the S3 server the archive tests run (versitygw, Apache-2.0); nothing here is compiled
// into Gatehouse.
package tools

import _ "github.com/versity/versitygw/cmd/versitygw"
