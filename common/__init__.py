"""What more than one program uses, by layer: proto (sans-IO) < ops < io < link."""
