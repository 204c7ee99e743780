# example
raise ImportError("requires the X plugin framework")
