from worker.bench.runs import main

main()
