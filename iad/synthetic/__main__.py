from iad.synthetic.cli import main

main()
