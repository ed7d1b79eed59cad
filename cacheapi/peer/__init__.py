"""The wire between nodes: the frame layout, the value wire format, the pooled transport and
streams, the owner's side (``server``) and the coordinator's side (``client``)."""
