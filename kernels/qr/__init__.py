"""qr_bag: quotient-remainder compositional embeddings, composed per id before pooling."""
