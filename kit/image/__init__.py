"""Images: render the definition file, convert it, build it, inspect it (kit image ...)."""
