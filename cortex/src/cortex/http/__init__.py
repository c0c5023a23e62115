"""cortex's own HTTP/1.1 server: a protocol on httptools' public parser, and what it serves."""
