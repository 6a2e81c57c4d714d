from gram_bench.harness.cli import main

if __name__ == "__main__":
    main()
