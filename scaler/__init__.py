"""`vfarm scale`: the queue monitor that grows and shrinks the farm (discover -> plan -> apply -> record)."""
