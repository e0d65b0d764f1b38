"""datagen's code below the flows, in layers that import only downwards:

    generators/<name>/   one folder per generator: prompts, messages, parser, verifier, program, eval
    recipes.py           several generators as one DAG (pure: parsing, order, pairs between tables)
    runtime/             the Generator protocol and the one pipeline that runs every generator
    engines/, sandbox/, answers.py   the model engines, the program sandbox, numeric answers
(and schemas/, the package beside this one, at the bottom: table schemas, the store, the catalog).
"""
