"""datagen tasks: generator logic (pure prompt builders and parsers), engines, the sandbox, Ray
stages and the table store. Prefect tasks that wire them live next to the flows that use them."""
