package body

import "time"

// SetFailWait makes s wait d instead of failWait in a failed Put's
// clean-up.
func SetFailWait(s *Store, d time.Duration) { s.failWait = d }
