from lightning_mae.downstream.runner import main

main()
